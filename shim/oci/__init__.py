"""OCI and Docker images in: references, registries, layouts and archives, layers flattened into
one tar stream for mksquashfs, the image config turned into Apptainer's layout."""
