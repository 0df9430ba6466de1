"""The site file's model: every section, the cross-field rules, and the loader (no stage is imported here)."""
