# run_hls.tcl: the Vitis HLS flow of the CEPD engine (static; settings come from project.tcl).
#
#   vitis_hls -f run_hls.tcl                          csim, csynth, export IP
#   vitis_hls -f run_hls.tcl -tclargs cosim=1         ... and C/RTL co-simulation (slow)
#   vitis_hls -f run_hls.tcl -tclargs synth=0         csim only
#
# The engine is model-independent: the testbench runs it on the golden vectors in data/.
array set opt {csim 1 synth 1 cosim 0 export 1}
foreach arg $::argv {
    if {[regexp {^(csim|synth|cosim|export)=([01])$} $arg -> key value]} {
        set opt($key) $value
    }
}
set here [file dirname [file normalize [info script]]]
source [file join $here project.tcl]

set src [file join $here src]
set tb [file join $here tb]
set data [file join $here data]
set cflags "-std=c++14 -I$src"
set tbflags "-std=c++14 -I$src -I$tb"
set tb_args [list [file join $data weights.bin] [file join $data golden_input.bin] \
    csim_output.bin $n_golden]

open_project -reset ${project_name}_hls
set_top $top
add_files [file join $src cepd_top.cpp] -cflags $cflags
add_files -tb [file join $tb tb_main.cpp] -cflags $tbflags
open_solution -reset solution1 -flow_target vivado
set_part $part
create_clock -period $clock_period_ns -name default

if {$opt(csim)} {
    csim_design -argv $tb_args
}
if {$opt(synth)} {
    csynth_design
}
if {$opt(cosim)} {
    cosim_design -argv $tb_args
}
if {$opt(export)} {
    export_design -format ip_catalog -vendor $ip_vendor -library hls -version $ip_version -ipname $top
}
exit
