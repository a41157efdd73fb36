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
# Kind: the real MCP Gateway on Istio in front of the services, as the MCP Gateway's own local
# environment sets it up (its `make local-env-setup`: Gateway API CRDs, Istio through the Sail
# operator, the MCP Gateway), plus Keycloak, on a Kind cluster whose API server trusts realm "mcp"
# (structured AuthenticationConfiguration, manifests/kind/). Needs a Docker engine and the network
# (images, the Sail operator's chart); `kind` is installed into .testbed/kind/bin from the Go
# module proxy when not on PATH. Every manifest comes from tests/manifests/kind_flow.py, stage by
# stage (the tests send the same stages to a testbed API server); generated files (demo CA,
# Keycloak certificate, policy signing key, rendered Kind config) live in .testbed/kind/.
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
KIND_FLOW     := $(PY) -m tests.manifests.kind_flow --pki $(KIND_PKI)
KIND_APPLY    := $(KIND_KUBECTL) apply --server-side --force-conflicts -f -
SAIL_VERSION  = $(shell $(PY) -c 'from tests.testbed import versions; print(versions.KIND_SAIL_OPERATOR)')
SAIL_CHART    = https://github.com/istio-ecosystem/sail-operator/releases/download/$(SAIL_VERSION)/sail-operator-$(SAIL_VERSION).tgz
MCP_WAIT      := --timeout=300s

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

kind-up: $(STAMP) $(KIND_PKI)/ca.crt ## Kind cluster (API server trusts realm mcp) + Gateway API + Istio
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
	$(PY) -m tests.testbed.build --only helm
	$(KIND_FLOW) gateway-api-crds | $(KIND_APPLY)
	$(KIND_KUBECTL) wait --for condition=Established --timeout=60s crd/gateways.gateway.networking.k8s.io
	$$($(KIND_FLOW) which-helm) --kube-context kind-$(KIND_CLUSTER) upgrade --install sail-operator \
	  --create-namespace --namespace istio-system --wait --timeout=300s $(SAIL_CHART)
	$(KIND_FLOW) istio | $(KIND_APPLY)
	$(KIND_KUBECTL) -n istio-system wait --for=condition=Ready istio/default $(MCP_WAIT)

kind-deploy: $(STAMP) ## Images into Kind; the MCP Gateway (its chart), Keycloak, the services
	$(PY) -m tests.testbed.build --only kustomize --only helm --only mcp-gateway
	for svc in $(KIND_SERVICES); do \
	  docker build --target $$svc -t kube-mcp-gateway/$$svc:$(KIND_TAG) . && \
	  $(KIND) load docker-image --name $(KIND_CLUSTER) kube-mcp-gateway/$$svc:$(KIND_TAG); \
	done
	$(KIND_FLOW) mcp-gateway-crds | $(KIND_APPLY)
	$(KIND_KUBECTL) wait --for condition=Established --timeout=60s \
	  crd/mcpgatewayextensions.mcp.kuadrant.io crd/mcpserverregistrations.mcp.kuadrant.io
	$(KIND_FLOW) mcp-gateway | $(KIND_APPLY)
	$(KIND_FLOW) services | $(KIND_APPLY)
	$(KIND_KUBECTL) -n mcp-system rollout status deploy/mcp-gateway-controller $(MCP_WAIT)
	$(KIND_KUBECTL) -n keycloak rollout status deploy/keycloak --timeout=600s
	for svc in $(KIND_SERVICES); do \
	  $(KIND_KUBECTL) -n kmg-system rollout status deploy/$$svc $(MCP_WAIT); done
	$(KIND_KUBECTL) -n mcp-system wait --for=condition=Ready mcpgatewayextension/mcp-gateway-extension $(MCP_WAIT)
	$(KIND_KUBECTL) -n mcp-test wait --for=condition=Ready mcpserverregistration/kubernetes-mcp $(MCP_WAIT)

kind-demo: $(STAMP) ## On Kind: login, token exchange, backend as the user, then the same through the gateway
	KUBECTL="$(KIND_KUBECTL)" PKI="$(KIND_PKI)" RUN_DIR="$(KIND_DIR)" PY="$(PY)" bash manifests/kind/demo.sh

kind-down: ## Delete the Kind cluster (keeps .testbed/kind for the next kind-up)
	$(KIND) delete cluster --name $(KIND_CLUSTER)
