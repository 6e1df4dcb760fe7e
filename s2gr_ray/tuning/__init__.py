"""⑨ Ray Tune + Optuna sweeps over search spaces of config keys (space.py, trial.py, sweep.py, results.py)."""
