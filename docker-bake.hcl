# Placeholder: the Docker stack (app image, downloader, TGI on CPU or CUDA) is built in a later
# step; until then this file defines no targets and `docker buildx bake` has nothing to build.
group "default" {
  targets = []
}
