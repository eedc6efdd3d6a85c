"""Composing a job: the job file, its scale and variant, the conf/ blocks and the command line
merged over the schema's defaults (`load.compose`), then the names the schema cannot check
without the registries (`names.check_names`: templates, data formats). A layer above config/,
which holds the schema and imports no other package of the project but the objectives'
settings."""
