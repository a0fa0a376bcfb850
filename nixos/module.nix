# NixOS module for atticd: `services.atticd`.
#
# The three units of the book's "Running in production" (systemd section):
# atticd-migrations (oneshot, before the others), atticd (--mode api-server)
# and atticd-gc (--mode garbage-collector, on one machine only). `settings`
# becomes server.toml in the Nix store, which every user can read: keep
# secrets out of it and give them as `${VAR}` references filled from
# `environmentFile`, read by systemd as root before it drops to the
# service's user.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkIf mkOption types;

  cfg = config.services.atticd;
  format = pkgs.formats.toml { };
  dataDir = "/var/lib/atticd";

  # What a server on one machine needs; `settings` overrides any of it.
  defaultSettings = {
    listen = "127.0.0.1:8080";
    token-root-key = "\${ATTIC_TOKEN_ROOT_KEY}";
    database.url = "sqlite://${dataDir}/server.db?mode=rwc";
    storage = {
      type = "local";
      path = "${dataDir}/storage";
    };
  };
  configFile = format.generate "server.toml" (lib.recursiveUpdate defaultSettings cfg.settings);

  atticd = mode: extraArgs: lib.concatStringsSep " " ([
    "${cfg.package}/bin/atticd"
    "--mode"
    mode
    "-f"
    "${configFile}"
    "--data-dir"
    dataDir
  ] ++ extraArgs);

  # The same sandbox as the book's units.
  hardening = {
    User = cfg.user;
    Group = cfg.group;
    StateDirectory = "atticd";
    StateDirectoryMode = "0700";
    UMask = "0077";
    NoNewPrivileges = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" "~@privileged @resources" ];
    CapabilityBoundingSet = "";
  } // lib.optionalAttrs (cfg.environmentFile != null) {
    EnvironmentFile = cfg.environmentFile;
  };
in
{
  options.services.atticd = {
    enable = mkEnableOption "atticd, the multi-tenant Nix binary cache server";

    package = mkOption {
      type = types.package;
      description = "The package whose `bin/atticd` runs. The flake's `nixosModules.atticd` sets it to the flake's own package.";
    };

    settings = mkOption {
      type = format.type;
      default = { };
      example = {
        api-endpoint = "https://cache.example.com/";
        database.url = "\${ATTIC_DATABASE_URL}";
        garbage-collection.default-retention-period = "6 months";
      };
      description = ''
        server.toml, as the book's "Configuration" table describes it. Merged
        over a single-machine default: listen on 127.0.0.1:8080, SQLite and
        blobs in /var/lib/atticd, and `token-root-key = "''${ATTIC_TOKEN_ROOT_KEY}"`.
        The file lands in the world-readable Nix store: write secrets as
        `''${VAR}` and put their values in `environmentFile`.
      '';
    };

    environmentFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/secrets/atticd.env";
      description = ''
        A file of `NAME=value` lines (ATTIC_TOKEN_ROOT_KEY=ed25519-private/...,
        database passwords, S3 keys) that the units' environment takes, for
        the `''${VAR}` references in `settings`. Readable by root alone.
      '';
    };

    user = mkOption {
      type = types.str;
      default = "atticd";
      description = "The user the units run as; created when left at `atticd`.";
    };

    group = mkOption {
      type = types.str;
      default = "atticd";
      description = "The group the units run as; created when left at `atticd`.";
    };

    garbageCollector.enable = mkOption {
      type = types.bool;
      default = true;
      description = "Whether this machine runs atticd-gc, the garbage collector. Exactly one machine of a deployment should.";
    };
  };

  config = mkIf cfg.enable {
    users.users = lib.optionalAttrs (cfg.user == "atticd") {
      atticd = {
        isSystemUser = true;
        group = cfg.group;
        home = dataDir;
      };
    };
    users.groups = lib.optionalAttrs (cfg.group == "atticd") { atticd = { }; };

    # For atticadm: `atticadm -f /etc/atticd/server.toml ...` with the
    # service's user and environment (see the book).
    environment.etc."atticd/server.toml".source = configFile;

    systemd.services = {
      atticd-migrations = {
        description = "atticd database migrations";
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ];
        serviceConfig = hardening // {
          Type = "oneshot";
          RemainAfterExit = true;
          ExecStart = atticd "db-migrations" [ ];
        };
      };

      atticd = {
        description = "atticd API server";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        requires = [ "atticd-migrations.service" ];
        after = [ "network-online.target" "atticd-migrations.service" ];
        serviceConfig = hardening // {
          ExecStart = atticd "api-server" [ "--log-format" "json" ];
          Restart = "on-failure";
          RestartSec = "5s";
          # Longer than [http] shutdown-timeout, so requests in flight finish.
          TimeoutStopSec = "45s";
          LimitNOFILE = 65536;
        };
      };
    } // lib.optionalAttrs cfg.garbageCollector.enable {
      atticd-gc = {
        description = "atticd garbage collector";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        requires = [ "atticd-migrations.service" ];
        after = [ "network-online.target" "atticd-migrations.service" ];
        serviceConfig = hardening // {
          ExecStart = atticd "garbage-collector" [ "--log-format" "json" ];
          Restart = "on-failure";
          RestartSec = "30s";
        };
      };
    };
  };
}
