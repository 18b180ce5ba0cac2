# A thin wrapper over CMake: `make`, `make run`, `make test`, `make clean`.
BUILD ?= build
JOBS  ?= $(shell nproc)
LISTEN ?= 127.0.0.1:8080

.PHONY: all deps build run test clean format

all: build

deps:
	@scripts/check-deps.sh

$(BUILD)/CMakeCache.txt: | deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null

build: deps $(BUILD)/CMakeCache.txt
	@cmake --build $(BUILD) -j $(JOBS)

run: deps $(BUILD)/CMakeCache.txt
	@cmake --build $(BUILD) -j $(JOBS) --target askpanel
	@mkdir -p data
	@$(BUILD)/askpanel seed-demo --if-empty
	@exec $(BUILD)/askpanel serve --listen $(LISTEN)

test: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

format:
	@clang-format -i $$(git ls-files 'engine/*.[ch]' 'tests/*.[ch]' 'bench/*.[ch]')

clean:
	@rm -rf $(BUILD)
