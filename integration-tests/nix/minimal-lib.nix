# A stand-in for nixpkgs' `lib`, just large enough to evaluate
# nixos/module.nix without nixpkgs (the test machine has no network):
# options are plain attribute sets, types carry a name and a `check`, and
# `mkIf` is kept as a marker for `eval-module.nix` to resolve. It does none
# of the module system's merging or priorities.
let
  mkType = name: check: { _type = "option-type"; inherit name check; };
in
rec {
  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption = what: mkOption {
    type = types.bool;
    default = false;
    description = "Whether to enable ${what}.";
  };
  mkIf = condition: content: { _type = "if"; inherit condition content; };
  mkDefault = value: value;

  optionalAttrs = condition: attrs: if condition then attrs else { };
  concatStringsSep = builtins.concatStringsSep;
  recursiveUpdate = lhs: rhs:
    lhs // builtins.mapAttrs
      (name: value:
        if builtins.isAttrs value && builtins.isAttrs (lhs.${name} or null)
        then recursiveUpdate lhs.${name} value
        else value)
      rhs;

  types = {
    bool = mkType "bool" builtins.isBool;
    str = mkType "str" builtins.isString;
    path = mkType "path" (value: builtins.isPath value || (builtins.isString value && builtins.substring 0 1 value == "/"));
    # A package is a derivation; here any store path string stands for one.
    package = mkType "package" (value: builtins.isAttrs value || builtins.isString value);
    attrs = mkType "attrs" builtins.isAttrs;
    nullOr = type: mkType "nullOr ${type.name}" (value: value == null || type.check value);
  };
}
