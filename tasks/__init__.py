"""The work: pure functions in topic modules (no Prefect import) and their thin @task wrappers in steps.py."""
