#!/usr/bin/env bash
# Makes sure the database servers the ODBC tests use are installed and running on loopback.
# On the project's machines they already run; on a fresh Debian box this installs and starts them.
set -uo pipefail
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

listening() { (echo >"/dev/tcp/127.0.0.1/$1") >/dev/null 2>&1; }

need=()
listening 5432 || command -v pg_ctlcluster >/dev/null || need+=(postgresql)
listening 3306 || command -v mariadbd >/dev/null || need+=(mariadb-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "services: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" || echo "services: could not install ${need[*]}; the ODBC tests will skip"
fi

if ! listening 5432 && command -v pg_ctlcluster >/dev/null; then
  ver=$(ls /etc/postgresql 2>/dev/null | head -n1)
  [ -n "$ver" ] && $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  sleep 2
  $SUDO -u postgres psql -qc "CREATE DATABASE test" 2>/dev/null || true
  # trust on loopback, as on the project's machines
  hba=$(ls /etc/postgresql/*/main/pg_hba.conf 2>/dev/null | head -n1)
  if [ -n "$hba" ] && ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust' "$hba"; $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main reload || true
  fi
fi
if ! listening 3306 && command -v mariadbd >/dev/null; then
  $SUDO start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  for _ in $(seq 1 30); do listening 3306 && break; sleep 1; done
  $SUDO mariadb -e "CREATE DATABASE IF NOT EXISTS test" 2>/dev/null || true
fi
exit 0
