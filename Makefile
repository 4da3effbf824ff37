# The project's chores, one recipe each; .ci/run calls them too. `make help` lists them.
# `make test TEST=e2e` runs one test file, `make test TEST=e2e ARGS=a_push` one test of it.

.PHONY: help deps check test test-postgres demo deny

help: ## list the recipes
	@sed -n 's/^\([a-z]*\):.*## \(.*\)/make \1\t\2/p' $(MAKEFILE_LIST)

deps: ## install and start what building and testing need (Debian; packages need root)
	scripts/install-deps.sh --tests </dev/null

check: ## formatting and lints, as CI checks them
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

test: ## every test (real Docker, git, Redis, Chromium); TEST=<file> for one file, ARGS=<name> to filter
	cargo test --no-fail-fast $(if $(TEST),--test $(TEST)) $(ARGS)

# The test files that use the history most, run again with every test server on PostgreSQL.
POSTGRES_TESTS ?= e2e intake reliability chains pulls

test-postgres: ## those test files again on PostgreSQL (a throwaway cluster the tests make)
	TEST_DATABASE=postgres cargo test --no-fail-fast $(foreach t,$(POSTGRES_TESTS),--test $(t)) $(ARGS)

demo: ## a local demo on http://127.0.0.1:5560/monitor (Ctrl-C stops it)
	scripts/demo.sh

deny: ## licences, banned and duplicate crates, sources (needs cargo install --locked cargo-deny)
	cargo deny check licenses bans sources
