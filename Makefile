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

# Each test binary shares the stack two tests at a time, except the ones that
# restart what the others use (PostgreSQL, Kafka, the operator): those run
# after, in binaries of their own. Every binary runs even when one fails.
integration: ## the worker's tests against the running stack's PostgreSQL and Kafka
	@source .stack/env && status=0; \
	$(CARGO) test -p siphon-worker --test integration -- --test-threads=2 || status=1; \
	$(CARGO) test -p siphon-worker --test outages -- --test-threads=1 || status=1; \
	exit $$status

e2e: ## end-to-end tests: captures applied to the running stack's operator
	@source .stack/env && status=0; \
	$(CARGO) test -p siphon-e2e --test e2e -- --test-threads=2 || status=1; \
	$(CARGO) test -p siphon-e2e --test e2e_restarts -- --test-threads=1 || status=1; \
	exit $$status

test: lint unit stack-up chart-check ## everything CI runs
	@status=0; $(MAKE) --no-print-directory integration || status=1; \
	$(MAKE) --no-print-directory e2e || status=1; exit $$status

demo: stack-up ## the quickstart on the local stack: a table, a capture, records in Kafka
	bash e2e/demo.sh

bench: ## throughput and memory against references measured in the same run
	bash e2e/bench/run.sh

chart-check: ## lint the chart, validate its manifests (needs the stack), test alerts and the Argo CD health check
	bash e2e/tools/chart-check.sh

clean: stack-down ## stop the stack and remove its state (keeps build caches)
	rm -rf .stack
