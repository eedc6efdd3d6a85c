# One entry point for users, developers and CI. Every target sets itself up (the venv is built
# on first use and rebuilt when pyproject.toml changes).
#
#   make launch job=vicuna [scale=local|full] [run=NAME] [set="optim.lr=1e-5 train.max_steps=20"]
#   make test                 # unit + integration tests (what CI runs)
#   make estimate job=vicuna  # projected full-scale bill, no cluster
#   make plan budget_usd=300 gpu=A100-80GB   # Chinchilla planner (or flops=1e21 / gpu_hours=500)
#   make cluster-up cluster=aws-spot          # a cluster from infra/ (local-fake: on this machine)
#   make preflight cluster=aws-spot job=vicuna scale=full   # credentials, quotas, storage, image
#   make launch job=vicuna cluster=aws-spot   # submitted through the Ray Jobs API, logs streamed
#   make logs id=<id> cluster=... / make stop id=<id> cluster=... / cluster-status / cluster-down
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# DeepSpeed compiles its C++ ops on first use; keep them so tests and runs pay that once.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0
# pip on this kind of machine warns about every local index location: keep the output readable.
PIP_QUIET := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

job ?= vicuna
scale ?=
run ?=
set ?=
yes ?=
variant ?=
stage ?=
fresh ?=
cluster ?=
id ?=
gpu ?= A100-80GB
budget_usd ?=
flops ?=
gpu_hours ?=
json ?=
follow ?=
model ?=
MLFLOW_PORT ?= 5000

# User values reach the program as ORCH_<name> environment variables, never as shell text:
# `$` and `#` are escaped, the originals are not exported (Make would expand them, `$(shell ...)`
# included, to build the recipes' environment), and recipes read the values in Python
# (orchestrator/make_args.py). A run name like `x; rm -rf ~` is data, refused by the name check.
USER_VARS := job scale run model set yes variant stage fresh cluster id gpu budget_usd flops gpu_hours json follow MLFLOW_PORT
$(foreach v,$(USER_VARS),$(eval export ORCH_$(v) := $(subst #,\#,$(subst $$,$$$$,$(value $(v))))))
unexport $(USER_VARS)
MAKEOVERRIDES :=
FROM_MAKE = $(BIN)/python -m orchestrator make $@

.PHONY: help install launch eval preflight estimate plan cluster-up cluster-down cluster-status logs stop bills validate-configs test test-unit test-integration test-gpu \
        bench lint fmt clean

help:
	@echo "make launch job=vicuna | make test | make estimate job=vicuna | make plan budget_usd=300 gpu=A100-80GB | make bench | make lint"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "setting up $(VENV): torch==2.13.0 first (PyPI's wheel: CUDA on a GPU machine), then the pinned rest"
	$(BIN)/pip install -q torch==2.13.0 $(PIP_QUIET)
	$(BIN)/pip install -q -e '.[dev]' $(PIP_QUIET)
	$(BIN)/pip install -q --no-build-isolation deepspeed==0.19.8 $(PIP_QUIET)
	@$(BIN)/python -c "import torch; v = torch.__version__; assert v.startswith('2.13.0'), f'torch {v} was installed instead of 2.13.0'"
	@touch $(STAMP)

install: $(STAMP)

launch: $(STAMP)
	$(FROM_MAKE)

eval: $(STAMP)
	$(FROM_MAKE)

estimate: $(STAMP)
	$(FROM_MAKE)

preflight: $(STAMP)
	$(FROM_MAKE)

cluster-up: $(STAMP)
	$(FROM_MAKE)

cluster-down: $(STAMP)
	$(FROM_MAKE)

cluster-status: $(STAMP)
	$(FROM_MAKE)

logs: $(STAMP)
	$(FROM_MAKE)

stop: $(STAMP)
	$(FROM_MAKE)

plan: $(STAMP)
	$(FROM_MAKE)

bills: $(STAMP)
	$(BIN)/python -m orchestrator bills

validate-configs: $(STAMP)
	$(BIN)/python -m orchestrator validate

# The unit tier runs on every core (its tests start no cluster and share nothing); the
# integration tier runs one test at a time (each starts its own Ray cluster on both cores).
test: $(STAMP)
	$(BIN)/python -m pytest -m "not integration and not gpu and not slow" -n 2 --durations=10
	$(BIN)/python -m pytest -m "integration and not gpu and not slow" --durations=15

test-unit: $(STAMP)
	$(BIN)/python -m pytest

test-integration: $(STAMP)
	$(BIN)/python -m pytest -m integration

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -m gpu tests/gpu -v -rs

bench: $(STAMP)
	$(BIN)/python bench/run.py

lint: $(STAMP)
	$(BIN)/ruff check orchestrator tests bench
	$(BIN)/ruff format --check orchestrator tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: $(STAMP)
	$(BIN)/ruff format orchestrator tests bench
	$(BIN)/ruff check --fix orchestrator tests bench

clean:
	rm -rf runs mlflow.db mlruns mlartifacts

.PHONY: mlflow-ui
mlflow-ui: $(STAMP)  ## MLflow UI on 127.0.0.1:$(MLFLOW_PORT) over ./mlflow.db; prints the job's runs page
	MLFLOW_PORT="$$ORCH_MLFLOW_PORT" $(BIN)/python -m orchestrator.tracking.server "$$ORCH_job"
