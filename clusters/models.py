"""Hopsworks clusters and user assignments (built in the clusters issue)."""
