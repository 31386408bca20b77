# Two stages: build a static binary, ship it with the config files on a
# distroless non-root base. Build: docker build --build-arg VERSION=$(git describe --always) -t queue-worker .
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd ./cmd
COPY internal ./internal
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/queue-worker ./cmd/queue-worker

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/queue-worker /usr/local/bin/queue-worker
# default.yaml + custom-environment-variables.yaml; --config overlays a ConfigMap.
COPY config/ /etc/queue-worker/
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/queue-worker"]
CMD ["run", "--config-dir", "/etc/queue-worker"]
