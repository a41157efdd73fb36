# kube-mcp-gateway — developer entry points. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install test lint fmt testbed demo bench soak opa-test clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP) ## Create .venv and install the package with its dev extra

testbed: $(STAMP) ## Build or fetch the real components (cached outside the clone)
	$(PY) -m tests.testbed.build

test: testbed ## Install, provision the testbed, run the whole suite
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

lint: testbed ## ruff + mypy + opa fmt/check --strict on policies/
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	opa=$$($(PY) -c 'from tests.testbed.build import binary; print(binary("opa"))'); \
	$$opa fmt --list --fail policies && $$opa check --strict policies

fmt: $(STAMP) ## Format the Python code
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

opa-test: testbed ## Run the Rego unit tests with coverage
	$(PY) -m tests.testbed.opa_test policies

demo: testbed ## Run the whole flow locally (testbed, services, gateway, scripted session)
	$(PY) -m tests.testbed.demo

bench: testbed ## Run the benchmarks; results in bench/results/
	$(PY) -m bench

soak: testbed ## Long mixed-traffic soak through the local gateway
	$(PY) -m bench --soak

clean: ## Remove the venv, caches and testbed run state (not the component cache)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .testbed *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# =================================================================================================
# Kind: the services and Keycloak on a local Kind cluster whose API server trusts Keycloak realm
# "mcp" (structured AuthenticationConfiguration, manifests/kind/). Needs a Docker engine; `kind`
# is installed into .testbed/kind/bin from the Go module proxy when not on PATH. Generated files
# (demo CA, Keycloak certificate, policy signing key, rendered Kind config) live in .testbed/kind/.
# =================================================================================================
KIND_CLUSTER  ?= kmg
KIND_DIR      := $(CURDIR)/.testbed/kind
KIND          ?= $(if $(shell command -v kind 2>/dev/null),kind,$(KIND_DIR)/bin/kind)
KIND_KUBECTL  ?= kubectl --context kind-$(KIND_CLUSTER)
KIND_TAG      ?= dev
KIND_SERVICES := mcp-backend token-exchange policy
KIND_PKI      := $(KIND_DIR)/pki
KEYCLOAK_HOST := keycloak.keycloak.svc.cluster.local
KEYCLOAK_IP   := 10.96.200.10

.PHONY: kind-up kind-deploy kind-demo kind-down

$(KIND_PKI)/ca.crt:
	mkdir -p $(KIND_PKI)
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
	  -subj "/CN=kube-mcp-gateway kind demo CA" -keyout $(KIND_PKI)/ca.key -out $(KIND_PKI)/ca.crt
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$(KEYCLOAK_HOST)" \
	  -keyout $(KIND_PKI)/keycloak.key -out $(KIND_PKI)/keycloak.csr
	printf 'subjectAltName=DNS:$(KEYCLOAK_HOST),DNS:keycloak.keycloak.svc,IP:$(KEYCLOAK_IP)\nextendedKeyUsage=serverAuth\n' \
	  > $(KIND_PKI)/keycloak.ext
	openssl x509 -req -in $(KIND_PKI)/keycloak.csr -CA $(KIND_PKI)/ca.crt -CAkey $(KIND_PKI)/ca.key \
	  -CAcreateserial -days 30 -extfile $(KIND_PKI)/keycloak.ext -out $(KIND_PKI)/keycloak.crt
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $(KIND_PKI)/policy-signing.pem
	chmod 600 $(KIND_PKI)/*.key $(KIND_PKI)/policy-signing.pem

kind-up: $(STAMP) $(KIND_PKI)/ca.crt ## Create the Kind cluster (its API server trusts realm mcp)
	@command -v $(KIND) >/dev/null || { mkdir -p $(KIND_DIR)/bin && \
	  GOBIN=$(KIND_DIR)/bin go install sigs.k8s.io/kind@$$($(PY) -c 'from tests.testbed import versions; print(versions.KIND)'); }
	mkdir -p $(KIND_DIR)/apiserver
	sed -e 's|__KMG_KIND_DIR__|$(KIND_DIR)|g' -e 's|^name: kmg$$|name: $(KIND_CLUSTER)|' \
	  manifests/kind/cluster.yaml > $(KIND_DIR)/cluster.yaml
	$(PY) -c 'import sys, pathlib as p; t = p.Path(sys.argv[1]).read_text(); \
	  ca = "".join("        " + l for l in p.Path(sys.argv[2]).read_text().splitlines(True)); \
	  p.Path(sys.argv[3]).write_text(t.replace("__KEYCLOAK_CA_PEM__\n", ca))' \
	  manifests/kind/authentication-config.yaml $(KIND_PKI)/ca.crt $(KIND_DIR)/apiserver/authentication-config.yaml
	$(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)' || \
	  $(KIND) create cluster --name $(KIND_CLUSTER) --config $(KIND_DIR)/cluster.yaml --wait 180s

kind-deploy: $(STAMP) ## Build the images, load them into Kind, deploy manifests/overlays/kind
	$(PY) -m tests.testbed.build --only kustomize
	for svc in $(KIND_SERVICES); do \
	  docker build --target $$svc -t kube-mcp-gateway/$$svc:$(KIND_TAG) . && \
	  $(KIND) load docker-image --name $(KIND_CLUSTER) kube-mcp-gateway/$$svc:$(KIND_TAG); \
	done
	for ns in keycloak kmg-system; do \
	  $(KIND_KUBECTL) create namespace $$ns --dry-run=client -o yaml | $(KIND_KUBECTL) apply -f -; done
	$(KIND_KUBECTL) -n keycloak create secret generic keycloak-tls --dry-run=client -o yaml \
	  --from-file=tls.crt=$(KIND_PKI)/keycloak.crt --from-file=tls.key=$(KIND_PKI)/keycloak.key \
	  --from-file=ca.crt=$(KIND_PKI)/ca.crt | $(KIND_KUBECTL) apply -f -
	$(KIND_KUBECTL) -n kmg-system create configmap keycloak-ca --dry-run=client -o yaml \
	  --from-file=ca.crt=$(KIND_PKI)/ca.crt | $(KIND_KUBECTL) apply -f -
	$(KIND_KUBECTL) -n kmg-system create secret generic policy-signing-key --dry-run=client -o yaml \
	  --from-file=key.pem=$(KIND_PKI)/policy-signing.pem | $(KIND_KUBECTL) apply -f -
	$(PY) -m tests.manifests.render manifests/overlays/kind \
	  | $(KIND_KUBECTL) apply --server-side --force-conflicts -f -
	$(KIND_KUBECTL) -n keycloak rollout status deploy/keycloak --timeout=600s
	for svc in $(KIND_SERVICES); do \
	  $(KIND_KUBECTL) -n kmg-system rollout status deploy/$$svc --timeout=300s; done

kind-demo: ## On Kind: user token → exchange → API server trusts it → backend acts as the user
	KUBECTL="$(KIND_KUBECTL)" PKI="$(KIND_PKI)" RUN_DIR="$(KIND_DIR)" bash manifests/kind/demo.sh

kind-down: ## Delete the Kind cluster (keeps .testbed/kind for the next kind-up)
	$(KIND) delete cluster --name $(KIND_CLUSTER)
