# The bluref-ray worker image: one image for the head and every worker of a cluster, so that all
# nodes run the same versions of Ray, torch and the project.
#
#   docker build -t REGISTRY/bluref-ray:0.1.0-cpu .
#   docker build --build-arg VARIANT=gpu -t REGISTRY/bluref-ray:0.1.0-gpu .
#
# VARIANT picks Ray's base image: `cpu` (Ubuntu) or `gpu` (NVIDIA CUDA; needs the NVIDIA
# container runtime on the node). torch comes from the registry with its own CUDA libraries, so
# the same install runs on both. Versions come from deploy/constraints.txt (`python
# deploy/lock.py` writes it); the build fails if anything else got installed.
ARG RAY_VERSION=2.60.0
ARG VARIANT=cpu
FROM rayproject/ray:${RAY_VERSION}-py311-${VARIANT}

WORKDIR /home/ray/bluref-ray
# Dependencies first, in their own layer: a code change does not reinstall 7 GB of wheels.
COPY --chown=ray:users deploy/constraints.txt deploy/lock.py deploy/
RUN pip install --no-cache-dir -r deploy/constraints.txt
COPY --chown=ray:users pyproject.toml README.md NOTICE ./
COPY --chown=ray:users bluref_ray bluref_ray
COPY --chown=ray:users jobs jobs
COPY --chown=ray:users configs configs
RUN pip install --no-cache-dir --no-deps -c deploy/constraints.txt . \
    && pip check \
    && python deploy/lock.py --check \
    && bluref --help > /dev/null
