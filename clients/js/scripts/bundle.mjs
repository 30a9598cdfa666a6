// Bundles one page of clients/js (`demo`, `admin`) into the file the server embeds
// (crates/herald-server/assets/NAME/app.js). With `--check` on the command line: build in memory
// and fail if the embedded file is not what the sources give.
import { build } from 'esbuild';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export async function bundle(name) {
  const check = process.argv.includes('--check');
  const out = fileURLToPath(new URL(`../../../crates/herald-server/assets/${name}/app.js`, import.meta.url));
  const result = await build({
    entryPoints: [fileURLToPath(new URL(`../${name}/app.ts`, import.meta.url))],
    bundle: true,
    format: 'esm',
    target: 'es2020',
    minify: true,
    legalComments: 'none',
    banner: { js: `// Built from clients/js/${name}/app.ts by \`npm run build:${name}\`; do not edit.` },
    outfile: out,
    write: !check,
    logLevel: 'warning',
  });
  if (check) {
    const built = result.outputFiles?.[0]?.text ?? '';
    if (built !== readFileSync(out, 'utf8')) {
      console.error(`${out} is stale: run \`npm run build:${name}\` in clients/js and commit the result`);
      process.exit(1);
    }
    console.log(`${name} bundle is up to date`);
  } else {
    console.log(`${name} bundle written to ${out}`);
  }
}
