"""Peers' benchmarks: run with the bench-only environment (bench/.venv-peers), never the project's."""
