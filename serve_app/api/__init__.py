"""HTTP routes of the ingress, one module per area (speech, health; sessions in `sessions.py`)."""
