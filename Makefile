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

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build nodecsr-controller and nodecsr-request into ./bin.
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

.PHONY: assets
assets: ## Build etcd, kube-apiserver and kube-controller-manager (only when missing).
	@hack/build-assets.sh >/dev/null

.PHONY: test
test: assets ## Run unit and integration tests against a real local control plane.
	$(GO) test -timeout $(TEST_TIMEOUT) -count=1 $(TEST_FLAGS) ./...

.PHONY: lint
lint: $(GOLANGCI_LINT) ## gofmt, go vet and golangci-lint.
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GOLANGCI_LINT) run ./...

.PHONY: demo
demo: assets ## Run the demo on a local control plane (KEEP=1 keeps it running).
	$(GO) run ./test/demo $(if $(KEEP),--keep)

.PHONY: bench
bench: assets ## Run the benchmarks and write BENCHMARKS.md.
	$(GO) test -run '^$$' -bench . -benchmem ./approver/ ./webhook/

.PHONY: helm-lint
helm-lint: $(HELM) ## Lint the Helm chart with default and non-default values.
	$(HELM) lint charts/nodecsr

.PHONY: clean
clean: ## Remove build output and caches (including the control-plane binaries).
	rm -rf $(BIN) $(CACHE)

$(GOLANGCI_LINT):
	@mkdir -p $(TOOLS)/tmp
	GOBIN=$(TOOLS)/tmp $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(TOOLS)/tmp/golangci-lint $@

$(HELM):
	@mkdir -p $(TOOLS)/tmp
	GOBIN=$(TOOLS)/tmp $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	mv $(TOOLS)/tmp/helm $@
