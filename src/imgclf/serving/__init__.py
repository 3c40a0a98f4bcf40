"""The API: the FastAPI app, per-request bounds, upload parsing, settings (``IMGCLF_*``
environment variables), Prometheus metrics and the OOD flag's hooks. Imports no torch,
no training and no pipeline code (``tests/unit/test_architecture.py`` checks).
"""
