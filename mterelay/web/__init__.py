"""The relay's HTTP surface: a Resource tree plus the Site that logs it."""
