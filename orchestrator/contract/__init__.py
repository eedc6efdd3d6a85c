"""The contract between the launcher, the workers and the stores: the run's records and artifact
names (records.py). A leaf package: it imports nothing of the project but the leaf modules
(names.py, errors.py), so everything may depend on it."""

from orchestrator.contract.records import *  # noqa: F403
from orchestrator.contract.records import __all__  # noqa: F401
