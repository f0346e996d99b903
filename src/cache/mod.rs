//! Node-local, content-addressed model cache and the puller that fills it (the `pull` subcommand).
