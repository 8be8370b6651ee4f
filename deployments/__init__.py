"""Model side of ric: config, datatypes, backends, batching and the Model deployment."""
