"""Deployment tests: Docker image, Helm chart, systemd units, AWS templates, the Grafana dashboard."""
