# Herald in a container: built in one stage, run from a small Debian image
# as an unprivileged user. Configure it with HERALD_* variables or a file
# mounted at /etc/herald/config.json (then add `--config
# /etc/herald/config.json` to the command).
#
#   docker build -t herald .
#   docker run -p 8000:8000 -e HERALD_CLIENT_TOKEN_HMAC_SECRET_KEY=... herald

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin herald

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /var/lib/herald herald
COPY --from=build /src/target/release/herald /usr/local/bin/herald
USER herald
WORKDIR /var/lib/herald
VOLUME /var/lib/herald
EXPOSE 8000
ENTRYPOINT ["herald"]
CMD ["serve", "--address", "0.0.0.0", "--data-dir", "/var/lib/herald"]
