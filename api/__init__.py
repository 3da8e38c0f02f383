"""HTTP door: FastAPI gateway over services/."""
