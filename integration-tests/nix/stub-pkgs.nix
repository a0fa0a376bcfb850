# A stand-in for the two things nixos/module.nix takes from nixpkgs:
# `formats.toml`, whose `generate` writes the file with `builtins.toFile`
# through the small TOML writer below (nixpkgs' uses remarshal), so the
# test can read what the units point at.
let
  lib = import ./minimal-lib.nix;
  value = v:
    if builtins.isString v then builtins.toJSON v
    else if builtins.isBool v then (if v then "true" else "false")
    else if builtins.isInt v then toString v
    else if builtins.isList v then "[" + builtins.concatStringsSep ", " (map value v) + "]"
    else throw "minimal TOML writer: unsupported value ${builtins.typeOf v}";
  isTable = v: builtins.isAttrs v;
  table = prefix: attrs:
    let
      names = builtins.attrNames attrs;
      scalars = builtins.filter (n: !isTable attrs.${n}) names;
      tables = builtins.filter (n: isTable attrs.${n}) names;
      key = n: builtins.toJSON n;
      header = if prefix == "" then "" else "[${prefix}]\n";
      child = n: if prefix == "" then key n else "${prefix}.${key n}";
    in
    header
    + builtins.concatStringsSep "" (map (n: "${key n} = ${value attrs.${n}}\n") scalars)
    + builtins.concatStringsSep "" (map (n: "\n" + table (child n) attrs.${n}) tables);
in
{
  formats.toml = { }: {
    type = lib.types.attrs;
    generate = name: settings: builtins.toFile name (table "" settings);
  };
}
