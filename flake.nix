{
  description = "Attic: a multi-tenant, chunk-deduplicating Nix binary cache";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: {
        default = pkgs.rustPlatform.buildRustPackage {
          pname = "attic";
          version = "0.1.0";
          src = self;
          cargoLock.lockFile = ./Cargo.lock;
          # The shipped packages only: building the whole workspace would give
          # the server the test features integration-tests turns on
          # (`fault-injection` lets an environment variable abort the garbage
          # collector) and install its `hostile-token` test tool.
          cargoBuildFlags = [ "-p" "server" "-p" "client" ];
          # The integration tests need a writable Nix store; run them with scripts/test.
          cargoTestFlags = [ "--workspace" "--exclude" "integration-tests" ];
          nativeBuildInputs = [ pkgs.pkg-config ];
        };
      });

      # services.atticd (nixos/module.nix), with the package defaulting to
      # this flake's.
      nixosModules.atticd = { lib, pkgs, ... }: {
        imports = [ ./nixos/module.nix ];
        services.atticd.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      };
      nixosModules.default = self.nixosModules.atticd;

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [ cargo rustc rustfmt clippy cargo-nextest mdbook ];
        };
      });
    };
}
