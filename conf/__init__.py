# Installed as the package `sane_cli.conf` (see pyproject.toml) so that Hydra finds the configs
# through `pkg://sane_cli.conf` from any folder, after an editable or a regular install.
