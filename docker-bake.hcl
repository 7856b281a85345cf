# Builds the app image (the downloader runs from the same image with its own command).
#   docker buildx bake                      # local build for this machine, cache in .buildx-cache
#   REGISTRY=ghcr.io/me/ TAG=0.2.0 docker buildx bake --push release
# TGI is not built here: the Compose file uses its official images.

variable "REGISTRY" {
  # Image name prefix with a trailing slash (e.g. ghcr.io/me/); empty for a local image.
  default = ""
}

variable "TAG" {
  default = "0.1.0"
}

variable "PYTHON_VERSION" {
  default = "3.11"
}

variable "CACHE_DIR" {
  # Local build cache, used when no registry is set.
  default = ".buildx-cache"
}

variable "BUILD_CACHE" {
  # "true": import and export the build cache (CACHE_DIR, or the registry's). Buildx's docker
  # driver (the default builder of a Docker Engine) exports none and keeps its cache in the
  # engine: scripts/build sets "false" for it. The docker-container driver exports it.
  default = "true"
}

function "cache_ref" {
  params = []
  result = "${REGISTRY}coding-playground:buildcache"
}

group "default" {
  targets = ["app"]
}

target "app" {
  context    = "."
  dockerfile = "containers/Dockerfile"
  target     = "app"
  tags       = ["${REGISTRY}coding-playground:${TAG}"]
  args = {
    PYTHON_VERSION = PYTHON_VERSION
    VERSION        = TAG
  }
  labels = {
    "org.opencontainers.image.title"   = "coding-playground"
    "org.opencontainers.image.version" = TAG
    "org.opencontainers.image.licenses" = "Apache-2.0"
  }
  cache-from = BUILD_CACHE == "true" ? [REGISTRY == "" ? "type=local,src=${CACHE_DIR}" : "type=registry,ref=${cache_ref()}"] : []
  cache-to   = BUILD_CACHE == "true" ? [REGISTRY == "" ? "type=local,dest=${CACHE_DIR},mode=max" : "type=registry,ref=${cache_ref()},mode=max"] : []
}

# Both platforms, for a registry (a multi-platform image cannot be loaded into the local engine).
target "release" {
  inherits  = ["app"]
  platforms = ["linux/amd64", "linux/arm64"]
}
