# Image of the operator binary: `docker build -f deploy/operator.Dockerfile -t smtprelay-operator:dev .`
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p operator --bin operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/operator /usr/local/bin/operator
USER 65532
ENTRYPOINT []
