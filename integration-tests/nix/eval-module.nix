# Evaluates nixos/module.nix against minimal-lib.nix and stub-pkgs.nix for
# `values` (what a user would set under services.atticd), checking each
# value against its option's type and filling in defaults, as the module
# system would for this flat set of options. Returns the options'
# declarations as data and the module's config for those values.
{ values }:
let
  lib = import ./minimal-lib.nix;
  pkgs = import ./stub-pkgs.nix;
  isOption = v: builtins.isAttrs v && (v._type or null) == "option";
  # services.atticd's options, with nested groups (garbageCollector.enable)
  # flattened to dotted names.
  flatten = prefix: attrs: builtins.concatLists (map
    (name:
      let v = attrs.${name}; path = if prefix == "" then name else "${prefix}.${name}"; in
      if isOption v then [{ name = path; option = v; }] else flatten path v)
    (builtins.attrNames attrs));
  declared = (import ../../nixos/module.nix {
    config = { };
    inherit lib pkgs;
  }).options.services.atticd;
  options = flatten "" declared;
  lookup = path: attrs: builtins.foldl' (acc: key: if acc ? ${key} then acc.${key} else null) attrs (builtins.filter builtins.isString (builtins.split "\\." path));
  resolved = builtins.listToAttrs (map
    ({ name, option }:
      let
        given = lookup name values;
        value = if given != null then given
          else if option ? default then option.default
          else throw "services.atticd.${name} has no default and was not set";
      in
      {
        inherit name;
        value = if option.type.check value then value
          else throw "services.atticd.${name}: not a ${option.type.name}";
      })
    options);
  cfg = builtins.removeAttrs resolved [ "garbageCollector.enable" ] // {
    garbageCollector.enable = resolved."garbageCollector.enable";
  };
  module = import ../../nixos/module.nix {
    config.services.atticd = cfg;
    inherit lib pkgs;
  };
  config = if module.config.condition then module.config.content else { };
in
{
  options = map
    ({ name, option }: {
      inherit name;
      type = option.type.name;
      default = option.default or null;
      hasDefault = option ? default;
      description = option.description or "";
    })
    options;
  inherit config;
}
