# Builds vmsend/vmrecv for installation and puts them in place, as `make && sudo make install`.
#
#   make                      release build, Swift runtime linked in (the binaries need no Swift toolchain)
#   make install              tools, man pages and completions under PREFIX (default /usr/local), from the
#                             last `make` (it builds only when nothing was built)
#   make uninstall            removes exactly what install put there
#   make test                 the README's test command (scripts/test.sh)
#
# PREFIX, DESTDIR (a staging root for packages), BINDIR, MANDIR and the completion folders may be set on
# the command line. scripts/install-deps.sh installs the C libraries the build needs.

PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR ?= $(PREFIX)/share/zsh/site-functions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d

SWIFT ?= swift
# The Swift standard library and Foundation linked statically: a destination host needs only libc, libstdc++,
# liblz4 and libxxhash (see README.md, "What the destination host needs").
SWIFT_BUILD_FLAGS ?= -c release --static-swift-stdlib
INSTALL ?= install
# Stripped by default: about half the size. INSTALL_PROGRAM='install -m 0755' keeps the symbols.
INSTALL_PROGRAM ?= $(INSTALL) -m 0755 -s
INSTALL_DATA ?= $(INSTALL) -m 0644

TOOLS = vmrun vmctl vmsend vmrecv vmstream
MAN1 = man/vmstream.1
MAN5 = man/vmstream.5
MAN8 = man/vmctl.8 man/vmrecv.8 man/vmrun.8 man/vmsend.8

.PHONY: all build install uninstall test

all: build

build:
	$(SWIFT) build $(SWIFT_BUILD_FLAGS)

# Where SWIFT_BUILD_FLAGS put the binaries.
BUILD_DIR ?= .build/release

# Builds first only when nothing was built, so `sudo make install` after `make` needs no Swift in root's PATH.
install:
	@[ -x "$(BUILD_DIR)/vmrecv" ] || $(MAKE) --no-print-directory build
	@bin="$(BUILD_DIR)" && set -e && \
	$(INSTALL) -d "$(DESTDIR)$(BINDIR)" "$(DESTDIR)$(MANDIR)/man1" "$(DESTDIR)$(MANDIR)/man5" \
		"$(DESTDIR)$(MANDIR)/man8" "$(DESTDIR)$(BASHCOMPDIR)" "$(DESTDIR)$(ZSHCOMPDIR)" "$(DESTDIR)$(FISHCOMPDIR)" && \
	for tool in $(TOOLS); do \
		echo "install $(DESTDIR)$(BINDIR)/$$tool"; \
		$(INSTALL_PROGRAM) "$$bin/$$tool" "$(DESTDIR)$(BINDIR)/$$tool"; \
		"$$bin/$$tool" --generate-completion-script bash > "$(DESTDIR)$(BASHCOMPDIR)/$$tool"; \
		"$$bin/$$tool" --generate-completion-script zsh > "$(DESTDIR)$(ZSHCOMPDIR)/_$$tool"; \
		"$$bin/$$tool" --generate-completion-script fish > "$(DESTDIR)$(FISHCOMPDIR)/$$tool.fish"; \
		chmod 0644 "$(DESTDIR)$(BASHCOMPDIR)/$$tool" "$(DESTDIR)$(ZSHCOMPDIR)/_$$tool" "$(DESTDIR)$(FISHCOMPDIR)/$$tool.fish"; \
	done
	$(INSTALL_DATA) $(MAN1) "$(DESTDIR)$(MANDIR)/man1"
	$(INSTALL_DATA) $(MAN5) "$(DESTDIR)$(MANDIR)/man5"
	$(INSTALL_DATA) $(MAN8) "$(DESTDIR)$(MANDIR)/man8"

uninstall:
	for tool in $(TOOLS); do \
		rm -f "$(DESTDIR)$(BINDIR)/$$tool" "$(DESTDIR)$(BASHCOMPDIR)/$$tool" "$(DESTDIR)$(ZSHCOMPDIR)/_$$tool" \
			"$(DESTDIR)$(FISHCOMPDIR)/$$tool.fish"; \
	done
	rm -f $(foreach page,$(MAN1),"$(DESTDIR)$(MANDIR)/man1/$(notdir $(page))") \
		$(foreach page,$(MAN5),"$(DESTDIR)$(MANDIR)/man5/$(notdir $(page))") \
		$(foreach page,$(MAN8),"$(DESTDIR)$(MANDIR)/man8/$(notdir $(page))")

test:
	scripts/test.sh
