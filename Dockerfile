# One image holding siphon-operator and siphon-worker.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p siphon-operator -p siphon-worker

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/siphon-operator /usr/local/bin/siphon-operator
COPY --from=build /src/target/release/siphon-worker /usr/local/bin/siphon-worker
USER 65532:65532
ENTRYPOINT ["siphon-operator"]
