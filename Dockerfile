# One image, two binaries: Fly.io runs /app and /listener as the process
# groups of fly.toml. deploy/fly_test.go checks that the two files agree, and
# e2e/container_test.go runs this file's final stage with real containers.

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static binaries: the final image has no libc. -buildvcs=false because the
# build context may hold no usable .git.
ENV CGO_ENABLED=0
RUN go build -trimpath -buildvcs=false -ldflags="-s -w" -o /out/app ./app \
 && go build -trimpath -buildvcs=false -ldflags="-s -w" -o /out/listener ./listener

FROM scratch
# CA roots for TLS to managed Redis (rediss://) and Postgres (sslmode=require).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/app /app
COPY --from=build /out/listener /listener
# Numeric, so no /etc/passwd is needed: nobody-like, not root.
USER 65532:65532
# app: LISTEN_ADDR :8080; listener: HEALTH_ADDR :8081.
EXPOSE 8080 8081
# No ENTRYPOINT: a fly.toml process command ("/listener") replaces CMD whole.
CMD ["/app"]
