"""Built-in datasets (a loader plus an evaluator each); every module here registers itself."""
