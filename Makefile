# nodecsr — run `make help` for the targets.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

GO        ?= go
CACHE     := $(CURDIR)/.cache
TOOLS     := $(CACHE)/tools
BIN       := $(CURDIR)/bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X github.com/nodecsr/nodecsr/internal/version.Version=$(VERSION)

GOLANGCI_LINT_VERSION := v2.15.0
HELM_VERSION          := v3.22.0
GOLANGCI_LINT := $(TOOLS)/golangci-lint-$(GOLANGCI_LINT_VERSION)
HELM          := $(TOOLS)/helm-$(HELM_VERSION)

# Integration tests start real control planes; this bounds one `go test` run.
TEST_TIMEOUT ?= 20m
TEST_FLAGS   ?=

# Fuzz targets as package:Target. `make fuzz` runs each for FUZZTIME;
# `make test` runs each for TEST_FUZZTIME.
FUZZ_TARGETS  := approver:FuzzEvaluate config:FuzzParse webhook:FuzzHandlers
FUZZTIME      ?= 60s
TEST_FUZZTIME ?= 10s
# Go minimizes every new interesting input for up to 60s by default, and
# executions spent minimizing are not fuzzing: in a 10s run each target
# stalled after about 3s on its first minimization (execs stayed flat). Keep
# minimization short so the time goes to new inputs; crashers are still
# minimized, for this long.
FUZZMINIMIZETIME ?= 1s

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build nodecsr-controller and nodecsr-request into ./bin.
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

.PHONY: assets
assets: ## Build etcd, kube-apiserver, kube-controller-manager, kubelet and promtool into the per-user cache (only when missing).
	@hack/build-assets.sh >/dev/null
	@hack/build-promtool.sh >/dev/null

.PHONY: test
test: assets ## Run unit and integration tests against a real local control plane, every Go benchmark once, then each fuzz target briefly.
	$(GO) test -timeout $(TEST_TIMEOUT) -count=1 $(TEST_FLAGS) ./...
	cd test && $(GO) test -timeout $(TEST_TIMEOUT) -count=1 $(TEST_FLAGS) ./...
	@echo ">> every Go benchmark once: they check their own results, and make bench prints them"
	$(GO) test -run '^$$' -bench . -benchtime 1x ./approver/ ./webhook/
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(TEST_FUZZTIME)

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME (default 60s) each.
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; \
		echo ">> fuzzing $$fn in ./$$pkg for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) ./$$pkg/ || exit 1; \
	done

.PHONY: lint
lint: $(GOLANGCI_LINT) ## gofmt, go vet, go mod tidy -diff and golangci-lint.
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	cd test && $(GO) vet ./...
	$(GO) mod tidy -diff
	cd test && $(GO) mod tidy -diff
	$(GOLANGCI_LINT) run ./...
	cd test && $(GOLANGCI_LINT) run ./...

.PHONY: demo
demo: assets ## Run the demo on a local control plane (KEEP=1 keeps it running).
	cd test && $(GO) run ./demo $(if $(KEEP),--keep)

.PHONY: bench
bench: assets ## Run the benchmarks side by side with kube-controller-manager and write BENCHMARKS.md (15 to 30 min on a 2-core machine: 27 min on 2026-12-02 on a slow one, 8.5 min of it the storm's wait for the inventory's rate-limited writes).
	cd test && $(GO) run ./bench all -markdown $(CURDIR)/BENCHMARKS.md

.PHONY: compat
compat: ## Run the kubelet bootstrap and rotation e2e cases with kubelets v1.34 to v1.37 and print what each sent (builds missing kubelets: ~10 min each).
	@hack/compat.sh

CHART_KUBE_VERSION := 1.37.2
CHART_TEST_VALUES  := test/integration/chart/testdata/values-nondefault.yaml

.PHONY: helm-lint
helm-lint: $(HELM) ## Lint and render the Helm chart with default and non-default values.
	$(HELM) lint --strict charts/nodecsr --kube-version $(CHART_KUBE_VERSION)
	$(HELM) lint --strict charts/nodecsr --kube-version $(CHART_KUBE_VERSION) -f $(CHART_TEST_VALUES)
	$(HELM) template nodecsr charts/nodecsr --kube-version $(CHART_KUBE_VERSION) >/dev/null
	$(HELM) template nodecsr charts/nodecsr --kube-version $(CHART_KUBE_VERSION) -f $(CHART_TEST_VALUES) >/dev/null
	$(HELM) template nodecsr charts/nodecsr >/dev/null

.PHONY: image
image: ## Build the nodecsr-controller image as bin/nodecsr-controller-image.tar (no daemon, no pulls).
	VERSION=$(VERSION) $(GO) run ./hack/image --output $(BIN)/nodecsr-controller-image.tar

.PHONY: e2e-node
e2e-node: assets image ## As root: run the image as the chart's Pod under a real kubelet and containerd, and a kubelet with its own address in a network namespace (installs Debian's containerd, runc and iproute2 when missing).
	cd test && NODECSR_E2E_NODE=$${NODECSR_E2E_NODE:-1} NODECSR_IMAGE_TARBALL=$(BIN)/nodecsr-controller-image.tar \
		$(GO) test -timeout 30m -count=1 -v $(TEST_FLAGS) ./e2e/node/

.PHONY: clean
clean: ## Remove build output and the repository's tool cache (the per-user control-plane cache stays; see clean-cache).
	rm -rf $(BIN) $(CACHE)

.PHONY: clean-cache
clean-cache: ## Remove the per-user cache of built control-plane binaries ($$NODECSR_CACHE, default ~/.cache/nodecsr).
	rm -rf "$${NODECSR_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/nodecsr}"

$(GOLANGCI_LINT):
	@mkdir -p $(TOOLS)/tmp
	GOBIN=$(TOOLS)/tmp $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(TOOLS)/tmp/golangci-lint $@

$(HELM):
	@mkdir -p $(TOOLS)/tmp
	GOBIN=$(TOOLS)/tmp $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	mv $(TOOLS)/tmp/helm $@
