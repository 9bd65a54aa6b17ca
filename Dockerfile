# syntax=docker/dockerfile:1
#
# nodecsr-controller's image: only the static binary, on an empty base, run as
# 65532:65532. `go run ./hack/image` (make image) builds the same image without
# a container daemon; internal/image documents and tests its layout.
#
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) \
#     --build-arg REVISION=$(git rev-parse HEAD) -t ghcr.io/nodecsr/nodecsr-controller:dev .

FROM --platform=$BUILDPLATFORM golang:1.26 AS build
ARG TARGETOS=linux
ARG TARGETARCH
ARG VERSION=dev
WORKDIR /src
# Dependencies first, so that a source change reuses the module download.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
# Only the packages the binary is built from (no .cache, bin or test assets
# in the build context's copy).
COPY cmd/ cmd/
COPY api/ api/
COPY approver/ approver/
COPY config/ config/
COPY internal/ internal/
COPY inventory/ inventory/
COPY webhook/ webhook/
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath \
      -ldflags "-s -w -X github.com/nodecsr/nodecsr/internal/version.Version=${VERSION}" \
      -o /out/nodecsr-controller ./cmd/nodecsr-controller

FROM scratch
ARG VERSION=dev
ARG REVISION=""
ARG CREATED=""
LABEL org.opencontainers.image.title="nodecsr-controller" \
      org.opencontainers.image.description="Decides kubelet client certificate requests and serves nodecsr's admission webhooks" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/nodecsr/nodecsr"
COPY --from=build /out/nodecsr-controller /nodecsr-controller
USER 65532:65532
ENTRYPOINT ["/nodecsr-controller"]
