"""Applications over the asa_runtime library: the local chat app (apps.server + apps.web)."""
