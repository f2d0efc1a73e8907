// Builds the browser client into the Python package (mterelay/public/), so pip and
// the Docker image ship it without Node. `node build.mjs [--outdir DIR]` writes the
// same bytes to DIR (the trial test compares a rebuild with the committed files):
// esbuild always resolves paths against the package directory, so source maps are
// identical wherever the files land.
import { build } from 'esbuild';
import { mkdirSync, writeFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
const packageDir = resolve(here, '../../mterelay/public');
const arg = process.argv.indexOf('--outdir');
const outdir = arg > 0 ? resolve(process.argv[arg + 1]) : packageDir;

const common = {
  entryPoints: [join(here, 'src/index.js')],
  bundle: true,
  minify: true,
  sourcemap: true,
  target: ['es2022'],
  platform: 'neutral',
  mainFields: ['module', 'main'],
  legalComments: 'eof',
  charset: 'utf8',
  write: false,
  absWorkingDir: here,
  logLevel: 'warning',
};

const builds = [
  { ...common, format: 'esm', outfile: join(packageDir, 'mte-relay-browser.js') },
  { ...common, format: 'iife', globalName: 'mteRelay', outfile: join(packageDir, 'mte-relay-browser.iife.js') },
];

mkdirSync(outdir, { recursive: true });
for (const options of builds) {
  const result = await build(options);
  for (const file of result.outputFiles) {
    writeFileSync(join(outdir, basename(file.path)), file.contents);
  }
}
