"""Model fetching into the shared cache; also the downloader container's entry point."""
