// Bundles the admin UI into the file the server embeds (crates/herald-server/assets/admin/app.js).
// `--check`: build in memory and fail if the embedded file is not what the sources give.
import { build } from 'esbuild';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const check = process.argv.includes('--check');

const out = fileURLToPath(new URL('../../../crates/herald-server/assets/admin/app.js', import.meta.url));
const result = await build({
  entryPoints: [fileURLToPath(new URL('./app.ts', import.meta.url))],
  bundle: true,
  format: 'esm',
  target: 'es2020',
  minify: true,
  legalComments: 'none',
  banner: { js: '// Built from clients/js/admin/app.ts by `npm run build:admin`; do not edit.' },
  outfile: out,
  write: !check,
  logLevel: 'warning',
});
if (check) {
  const built = result.outputFiles?.[0]?.text ?? '';
  if (built !== readFileSync(out, 'utf8')) {
    console.error(`${out} is stale: run \`npm run build:admin\` in clients/js and commit the result`);
    process.exit(1);
  }
  console.log('admin bundle is up to date');
} else {
  console.log(`admin bundle written to ${out}`);
}
