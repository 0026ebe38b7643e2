#!/bin/sh
# Debian packages the tests use: Fashion-MNIST (MIT) for the training test, Chromium for the
# HTML report test and, with its WebDriver, the `deconv serve` browser test. Installs only what
# is missing; uses sudo when not root.
set -e
missing=""
[ -d /usr/share/datasets/fashion-mnist ] || missing="$missing dataset-fashion-mnist"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v chromedriver >/dev/null 2>&1 || missing="$missing chromium-driver"
[ -z "$missing" ] && exit 0
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
