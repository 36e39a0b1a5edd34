"""Ray Serve text-to-speech application: engines, fallback router, FastAPI ingress, sessions."""
