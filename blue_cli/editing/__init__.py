"""The editing engine: keys, targets, covariance, closed-form updates, methods, strategies."""
