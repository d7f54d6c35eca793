.PHONY: setup demo test bench
setup:          ## create/update .venv with the pinned stack
	bash scripts/setup_env.sh
demo:           ## the main job on the bundled example (README Quick start 1)
	@bash scripts/demo.sh
test:           ## the test suite (README Quick start 2, and CI)
	bash scripts/run_tests.sh -q
