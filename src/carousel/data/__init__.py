"""Data for carousel jobs: corpora, batching and synthetic tasks."""
