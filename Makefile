# Siphon: the two set-up commands are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
STACK := e2e/stack/stack.sh

.PHONY: help build crd lint unit stack-up stack-down stack-status integration e2e test demo bench chart-check clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

build: ## build both binaries (debug)
	$(CARGO) build --workspace

crd: ## regenerate crds/postgrescapture.yaml from the Rust types
	$(CARGO) run -q -p siphon-crds --bin crdgen > crds/postgrescapture.yaml
	cp crds/postgrescapture.yaml charts/siphon/crds/postgrescapture.yaml
	$(CARGO) run -q -p siphon-crds --bin crdgen -- --reference > docs/crd-reference.md

lint: ## rustfmt and clippy, warnings denied
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: ## unit tests (no stack needed)
	$(CARGO) test --workspace --lib --bins

stack-up: ## start PostgreSQL, Kafka, the control plane, node agent, CRD and operator; writes .stack/env
	bash $(STACK) up

stack-down: ## stop everything stack-up started
	bash $(STACK) down

stack-status: ## one line per process of the stack
	bash $(STACK) status

integration: ## integration and end-to-end tests against the running stack
	source .stack/env && $(CARGO) test --workspace --no-fail-fast --test '*' -- --test-threads=2

test: lint unit stack-up chart-check integration ## everything CI runs

demo: stack-up ## the quickstart on the local stack: a table, a capture, records in Kafka
	bash e2e/demo.sh

bench: ## throughput and memory against references measured in the same run
	bash e2e/bench/run.sh

chart-check: ## lint the chart, validate its manifests (needs the stack), test alerts and the Argo CD health check
	bash e2e/tools/chart-check.sh

clean: stack-down ## stop the stack and remove its state (keeps build caches)
	rm -rf .stack
